"""streambid models: features, the online CTR learner and its serving snapshot."""

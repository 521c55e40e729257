"""streambid streams: Faust agents, topics, attribution and the spend ledger."""

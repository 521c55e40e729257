"""streambid bidder: the OpenRTB endpoint, campaign matching, pricing and pacing."""

__version__ = "0.1.0"

"""lossearch: LLM-driven search for new preference-optimization losses."""

__version__ = "0.1.0"

"""EmailMCP: send email through your users' own mailboxes, from apps and AI agents."""

__version__ = "0.1.0"

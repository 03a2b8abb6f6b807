"""The actions of the registry as Model Context Protocol tools, over streamable HTTP (`/mcp`) and stdio."""

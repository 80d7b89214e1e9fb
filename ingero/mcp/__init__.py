"""The MCP shell: the standard seven tools over a stored trace, audited (``ingero mcp --db FILE``)."""

"""The admin listener: its config section, routes, access control and HTTP server."""

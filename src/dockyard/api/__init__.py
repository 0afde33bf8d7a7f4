"""HTTP routers, one per resource: authentication, parsing and status codes; the logic is in services."""

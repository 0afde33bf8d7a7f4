"""The logic behind each router, one module per resource: takes a session, returns wire models.

Services validate against the database (does the template exist in this organization?), record desired
state and answer at once; they never call a runtime (DESIGN.md principle 1).
"""

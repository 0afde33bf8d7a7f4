"""Wire models, one module per resource, in the style of the API family that serves them:
GMI Cloud's camelCase with RFC 3339 times (`/api/v1`), PPIO's snake_case with unix seconds (`/gpus/v2`)."""

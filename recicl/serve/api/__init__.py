"""The HTTP layer of serving, free of Ray: schemas, errors, middleware and the routes over a
backend protocol (:class:`~recicl.serve.api.backend.ApiBackend`)."""

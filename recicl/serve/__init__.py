"""Serving: Ray Serve app (FastAPI ingress), model deployment and the durable interaction store."""

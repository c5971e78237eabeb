"""Web: the REST API, status pages, auth, OpenAPI document and Prometheus metrics."""

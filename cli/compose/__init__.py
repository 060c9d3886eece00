"""`berth compose`: a client-side orchestrator for a subset of the Compose file format.

Like `docker compose`, it runs entirely in the CLI: it reads the file (loader), works
out the order (graph), turns each service into the api's RunSpec (runspec) and drives
the api through the client SDK (engine). The services know nothing about projects;
a project is whatever carries the `com.docker.compose.project` label.
"""

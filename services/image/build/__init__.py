"""`berth build`: Dockerfiles parsed, contexts received, stages executed into images.

The builder never spawns a process: each RUN goes back to the caller (the api)
as a RunStep on a snapshot's mount, and the caller answers with a RunResult.
"""

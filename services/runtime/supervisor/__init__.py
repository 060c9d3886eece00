"""The supervisor process (``server``, ``spawn``) and the runtime server's client to it."""

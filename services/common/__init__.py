"""Pieces every Berth service shares: configuration, database, gRPC server, errors."""

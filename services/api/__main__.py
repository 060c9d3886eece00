"""`python -m services.api`: the public gateway the CLI talks to."""

from services.api.server import main

if __name__ == "__main__":
    main()

"""``python -m engine.study ...``: the method comparison (see ``engine.study.cli``)."""

from .cli import main

if __name__ == "__main__":
    main()

"""`python -m r2` runs the `r2` command line."""

from r2.cli import main

if __name__ == "__main__":
    main()

"""Run the evalsuite command line from a checkout: `python cli.py --help`."""

from evalsuite.cli import main

if __name__ == "__main__":
    main()

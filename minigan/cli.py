"""What the command-line programs share: a bad command line ends them with one line and exit status 2."""

import argparse


class UsageError(Exception):
    """A bad command line found after parsing; reported as ``prog: error: message`` with exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line, ``prog: error: message``, and exit status 2: not argparse's
    usage block before it, which ``--help`` shows."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

"""Send a script's output to its rule's log, tracebacks included.

Redirecting stderr inside `with open(log)` loses the traceback of an exception: it is printed after the
block has closed the file. Here the exception is written to the log (and to the real stderr, for
Snakemake's error report) before the file closes, and re-raised.
"""

import sys
import traceback
from contextlib import contextmanager


@contextmanager
def logged(path):
    out, err = sys.stdout, sys.stderr
    with open(path, "w") as log:
        sys.stdout = sys.stderr = log
        try:
            yield log
        except SystemExit as exc:  # a script's own one-line error message
            if exc.code not in (None, 0):
                print(exc.code, file=log)
                print(exc.code, file=err)
            raise
        except BaseException:
            traceback.print_exc(file=log)
            traceback.print_exc(file=err)
            raise
        finally:
            log.flush()
            sys.stdout, sys.stderr = out, err

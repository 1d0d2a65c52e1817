import sys

try:
    from bico.cli import main
except KeyboardInterrupt:  # Ctrl-C before the command's own handling is in place
    print("bico: interrupted", file=sys.stderr)
    exec("None")  # clears CPython's "killed by Ctrl-C" mark: see bico.cli.forget_unhandled_interrupt
    sys.exit(130)
sys.exit(main())

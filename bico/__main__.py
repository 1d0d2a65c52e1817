import sys

try:
    from bico.cli import main
except KeyboardInterrupt:  # Ctrl-C before the command's own handling is in place
    print("bico: interrupted", file=sys.stderr)
    sys.exit(130)
sys.exit(main())

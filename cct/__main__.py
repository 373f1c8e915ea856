import sys

try:
    from cct.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command: no traceback
    print("cct: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())

# Helpers the bench scripts share; sourced, not run: . "$ROOT/bench/lib.sh"

# A free TCP port on the loopback address (bound and released; the caller binds it next).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Runs a command as `postgres` when run as root (a throwaway cluster refuses to run as root),
# else as the caller.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

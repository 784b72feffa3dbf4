"""Where mlq lives on a machine by default: one home for the paths the CLI and the
server both need (kept free of heavy imports: the CLI reads it at start-up)."""

DEFAULT_STATE_DIR = "/var/lib/mlq"  # MLQ_STATE_DIR, --state-dir
DEFAULT_SOCKET = "/run/mlq/mlq.sock"  # MLQ_SOCKET, --socket
DEFAULT_CONFIGS = ("/etc/mlq/cluster.yaml",)  # MLQ_CONFIG, --config


def exec_socket_path(api_socket: str) -> str:
    """mlq exec's socket, beside the API's socket (scheduler/daemon/execserver.py)."""
    return api_socket + ".exec"

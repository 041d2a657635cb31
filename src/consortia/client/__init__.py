"""Site side: the runtime that answers the server's phases, and the trainers."""

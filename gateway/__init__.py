"""tongban-gateway: integration gateway for 跨省通办 (inter-provincial government services)."""

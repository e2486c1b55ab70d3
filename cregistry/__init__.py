"""cregistry: a client registry for Mosquitto (go-auth HTTP backend on Redis)."""

__version__ = "0.1.0"

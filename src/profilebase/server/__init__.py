"""The server: settings, intake, workers, storage and the HTTP API."""

"""The HTTP/JSON and SSE gateway and the web page: the same runs as gRPC, for browsers and plain HTTP clients."""

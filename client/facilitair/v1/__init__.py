"""Generated gRPC stubs for the facilitair.v1 protobuf package (see protos/); do not edit."""

"""The gRPC servicers: anatomy uploads, plan jobs, plan evaluation."""

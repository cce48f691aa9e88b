"""ectplan's services: the plan search on Ray, the gRPC front and the command line."""

import os

# gRPC's fork handlers make a fork+exec child abort before its exec now and then (SIGABRT in
# the child's post-fork handler, "epoll_wait error: Bad file descriptor": grpc/grpc#43055)
# while other threads of the parent use gRPC. Ray starts its GCS, raylet and agents by
# fork+exec, so a process that serves or calls gRPC and starts a local Ray (the front, `./run
# main`) sometimes lost one of them and missed Ray's 30 s start-up deadline. Measured with
# grpcio 1.85.3, 4 client threads streaming while the main thread ran subprocess.Popen with a
# preexec_fn: 9 and 20 of 1000 children aborted; with the handlers off, 0 of 2000
# (tests/services/test_grpc_fork.py). No ectplan process uses gRPC in a child it forked, so
# the handlers stay off. gRPC reads this when it is first imported: here, before any module
# of this package imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

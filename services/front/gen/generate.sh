#!/usr/bin/env bash
# Regenerates the Python code of proto/ectplan/v1 into services/front/gen (committed, so users
# need not run protoc). Needs the dev extras: grpcio-tools (protoc) and mypy-protobuf (.pyi).
#   services/front/gen/generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="$here"
cd "$repo"
rm -rf "$out/ectplan"
python -m grpc_tools.protoc \
    -I proto \
    --python_out="$out" \
    --grpc_python_out="$out" \
    --mypy_out="$out" \
    --mypy_grpc_out="$out" \
    proto/ectplan/v1/*.proto
# protoc writes imports relative to the proto root ("from ectplan.v1 import x_pb2"); make them
# absolute inside this package. Serialized descriptors name "ectplan/v1/x.proto" and never
# match these patterns.
find "$out/ectplan" -name '*.py' -o -name '*.pyi' | while read -r f; do
    sed -i -E \
        -e 's/^from ectplan\.v1 import /from services.front.gen.ectplan.v1 import /' \
        -e 's/(^|[^.A-Za-z_])ectplan\.v1\.([a-z_]+_pb2)/\1services.front.gen.ectplan.v1.\2/g' \
        "$f"
done
# Message-only files get empty *_pb2_grpc modules: drop them.
for proto in proto/ectplan/v1/*.proto; do
    if ! grep -q '^service ' "$proto"; then
        stem="$(basename "$proto" .proto)"
        rm -f "$out/ectplan/v1/${stem}_pb2_grpc.py" "$out/ectplan/v1/${stem}_pb2_grpc.pyi"
    fi
done
# The service stubs assume typed grpc stubs (grpc-stubs), which the project does not install:
# keep mypy out of them (the message stubs stay fully typed).
for f in "$out"/ectplan/v1/*_pb2_grpc.py "$out"/ectplan/v1/*_pb2_grpc.pyi; do
    printf '# mypy: ignore-errors\n%s\n' "$(cat "$f")" > "$f"
done
touch "$out/ectplan/__init__.py" "$out/ectplan/v1/__init__.py"
echo "generated into $out/ectplan/v1"

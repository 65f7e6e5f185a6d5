#!/usr/bin/env bash
# Packages flowgate.wasm as an OCI image in Istio's Wasm image format, offline: no registry, no docker.
#
#   scripts/istio-image.sh [WASM] [OUT]
#     WASM  default target/wasm32-wasip1/release/flowgate.wasm (build it first)
#     OUT   default target/istio-image  (an OCI image layout; OUT.tar is the same layout as one file)
#     FLOWGATE_IMAGE_TAG  tag recorded in the layout, default: the flowgate crate version
#
# Format: the "compat" variant that istio-agent reads (pkg/wasm/imagefetcher.go): an OCI image
# manifest with exactly one layer, media type application/vnd.oci.image.layer.v1.tar+gzip, holding
# the file plugin.wasm. The layer and every JSON blob are built reproducibly (fixed mtime, owner and
# order, gzip -n, no timestamps), so the same flowgate.wasm always gives the same manifest digest.
#
# Push it with any OCI tool, e.g.
#   skopeo copy oci:target/istio-image:TAG docker://REGISTRY/flowgate:TAG
#   crane push target/istio-image REGISTRY/flowgate:TAG
#   oras cp --from-oci-layout target/istio-image:TAG REGISTRY/flowgate:TAG
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

wasm="${1:-target/wasm32-wasip1/release/flowgate.wasm}"
out="${2:-target/istio-image}"
tag="${FLOWGATE_IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"$/\1/p' filter/Cargo.toml | head -n 1)}"

if [[ ! -f "$wasm" ]]; then
  echo "no $wasm: build it first with" >&2
  echo "  cargo build --release --target wasm32-wasip1 -p flowgate" >&2
  exit 1
fi
if [[ "$(head -c 4 "$wasm" | od -An -tx1 | tr -d ' \n')" != "0061736d" ]]; then
  echo "$wasm is not a Wasm module" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The layer: a tar with plugin.wasm only, then gzip without name or timestamp.
install -m 0644 "$wasm" "$work/plugin.wasm"
tar --format=ustar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -C "$work" -cf "$work/layer.tar" plugin.wasm
gzip -9 -n -c "$work/layer.tar" >"$work/layer.tar.gz"

rm -rf "$out" "$out.tar"
mkdir -p "$out/blobs/sha256"

diff_id="$(sha256sum "$work/layer.tar" | cut -d ' ' -f 1)"
layer_digest="$(sha256sum "$work/layer.tar.gz" | cut -d ' ' -f 1)"
layer_size="$(stat -c %s "$work/layer.tar.gz")"
cp "$work/layer.tar.gz" "$out/blobs/sha256/$layer_digest"

# Config, manifest and index: JSON written by python3, each blob named by its own SHA-256.
manifest_digest="$(
  OUT="$out" TAG="$tag" DIFF_ID="$diff_id" LAYER_DIGEST="$layer_digest" LAYER_SIZE="$layer_size" \
    python3 - <<'PY'
import hashlib, json, os

out = os.environ["OUT"]

def blob(doc):
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}

config = blob({
    "architecture": "wasm",
    "os": "wasip1",
    "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + os.environ["DIFF_ID"]]},
})
manifest = blob({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
    "layers": [{
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": "sha256:" + os.environ["LAYER_DIGEST"],
        "size": int(os.environ["LAYER_SIZE"]),
    }],
})
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **manifest,
        "annotations": {"org.opencontainers.image.ref.name": os.environ["TAG"]},
    }],
}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f, separators=(",", ":"), sort_keys=True)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(manifest["digest"])
PY
)"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$out" -cf "$out.tar" .

echo "OCI image layout: $out (and $out.tar), tag $tag"
echo "manifest digest:  $manifest_digest"
echo "  WasmPlugin url: oci://REGISTRY/flowgate:$tag  (or pin: oci://REGISTRY/flowgate@$manifest_digest)"
echo "  WasmPlugin sha256 (for an oci:// url it is the manifest digest): ${manifest_digest#sha256:}"

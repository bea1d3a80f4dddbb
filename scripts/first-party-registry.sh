#!/usr/bin/env bash
# Adds the current first-party plugins to registry/default/, the registry compiled into the
# galley binary (so `galley plugin install galley/math-answer` works with no server), signed
# with the first-party key. Run by whoever holds that key:
#     scripts/first-party-registry.sh /path/to/first-party.key
# The secret key is never in git; its id and public half are registry/default/first-party.pub,
# which galley trusts by default. Releases are immutable: a version already in the registry
# is kept as it is, so change a plugin's version in its galley.toml to release a change.
# A new key (rotation) means: remove registry/default/, rerun with the new key, release galley.
set -euo pipefail
cd "$(dirname "$0")/.."
key=${1:?usage: scripts/first-party-registry.sh SECRET_KEY_FILE}
scripts/build-plugins.sh
galley=target/debug/galley
pub=$($galley plugin keygen --show "$key")
if [ -f registry/default/first-party.pub ] && [ "$(cat registry/default/first-party.pub)" != "$pub" ]; then
    echo "registry/default is signed by $(cut -d' ' -f1 registry/default/first-party.pub), not by $key; remove registry/default to rotate keys" >&2
    exit 1
fi
mkdir -p registry/default
echo "$pub" > registry/default/first-party.pub
# early-stop (Python) is not embedded: a Python component carries its own CPython (~18 MB),
# which would be compiled into every galley binary and kept in git; it is built from source
# (scripts/build-plugins.sh) and published to a team registry like any plugin.
for p in arith bfcl-prompts calculator curriculum exact-match format function-call jsonl-chat length-penalty math-answer preference tiny-lm wordle; do
    if ! out=$($galley plugin publish "target/plugins/$p.wasm" --registry registry/default --key "$key" 2>&1); then
        case "$out" in *"already published"*) echo "kept    $p (this version is already released)";; *) echo "$out" >&2; exit 1;; esac
    else
        echo "$out"
    fi
done

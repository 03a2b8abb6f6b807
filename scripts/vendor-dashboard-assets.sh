#!/usr/bin/env bash
# Refreshes the dashboard's vendored front-end files in src/emailmcp/dashboard/static/vendor/ from the npm registry:
# `npm pack` of the pinned versions below into a temporary folder, then the built files from the packages and their
# LICENSE files are copied as they are (no build step), and vendor/README.md is rewritten with their sha256 sums.
#
#   scripts/vendor-dashboard-assets.sh            # fetch the pinned versions, copy them, rewrite README.md
#   scripts/vendor-dashboard-assets.sh --check    # offline: do the files match the sha256 sums in README.md?
#
# To upgrade, change a version here, run the script, look at the diff and test the dashboard.
set -euo pipefail

HTMX_VERSION=2.0.11   # npm htmx.org; stay on 2.0.x: htmx 4 (npm's "latest") changed the API
UPLOT_VERSION=1.6.32  # npm uplot

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENDOR=$ROOT/src/emailmcp/dashboard/static/vendor
FILES=(htmx.min.js uPlot.iife.min.js uPlot.min.css LICENSE.htmx.txt LICENSE.uplot.txt)

check() {
    local status=0 file sum
    for file in "${FILES[@]}"; do
        if [[ ! -f $VENDOR/$file ]]; then
            echo "missing: $VENDOR/$file" >&2
            status=1
            continue
        fi
        sum=$(sha256sum "$VENDOR/$file" | cut -d' ' -f1)
        if grep -q "^| \`$file\` |.*| \`$sum\` |$" "$VENDOR/README.md"; then
            echo "ok: $file $sum"
        else
            echo "sha256 of $file ($sum) is not the one in $VENDOR/README.md" >&2
            status=1
        fi
    done
    return $status
}

if [[ ${1:-} == --check ]]; then
    check
    exit
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--check]" >&2
    exit 2
fi

case $HTMX_VERSION in
    2.*) ;;
    *) echo "HTMX_VERSION=$HTMX_VERSION: the dashboard is written for htmx 2.x" >&2; exit 1 ;;
esac
command -v npm >/dev/null || { echo "npm is needed (Node.js 20+)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" "htmx.org@$HTMX_VERSION" "uplot@$UPLOT_VERSION" >/dev/null
mkdir "$work/htmx" "$work/uplot"
tar -xzf "$work/htmx.org-$HTMX_VERSION.tgz" -C "$work/htmx"
tar -xzf "$work/uplot-$UPLOT_VERSION.tgz" -C "$work/uplot"

mkdir -p "$VENDOR"
install -m 0644 "$work/htmx/package/dist/htmx.min.js" "$VENDOR/htmx.min.js"
install -m 0644 "$work/htmx/package/LICENSE" "$VENDOR/LICENSE.htmx.txt"
install -m 0644 "$work/uplot/package/dist/uPlot.iife.min.js" "$VENDOR/uPlot.iife.min.js"
install -m 0644 "$work/uplot/package/dist/uPlot.min.css" "$VENDOR/uPlot.min.css"
install -m 0644 "$work/uplot/package/LICENSE" "$VENDOR/LICENSE.uplot.txt"

sum() { sha256sum "$VENDOR/$1" | cut -d' ' -f1; }
cat >"$VENDOR/README.md" <<EOF
# Vendored front-end files of the dashboard

Copied unchanged from the npm registry's packages by \`scripts/vendor-dashboard-assets.sh\`, which also writes this
file: no build step, no node_modules. The dashboard's templates load them from \`static/vendor/\`.

| file | package | version | licence | sha256 |
| --- | --- | --- | --- | --- |
| \`htmx.min.js\` | htmx.org (dist/htmx.min.js) | $HTMX_VERSION | 0BSD | \`$(sum htmx.min.js)\` |
| \`uPlot.iife.min.js\` | uplot (dist/uPlot.iife.min.js) | $UPLOT_VERSION | MIT | \`$(sum uPlot.iife.min.js)\` |
| \`uPlot.min.css\` | uplot (dist/uPlot.min.css) | $UPLOT_VERSION | MIT | \`$(sum uPlot.min.css)\` |
| \`LICENSE.htmx.txt\` | htmx.org (LICENSE) | $HTMX_VERSION | 0BSD | \`$(sum LICENSE.htmx.txt)\` |
| \`LICENSE.uplot.txt\` | uplot (LICENSE) | $UPLOT_VERSION | MIT | \`$(sum LICENSE.uplot.txt)\` |

htmx stays on 2.0.x: npm's \`latest\` of htmx.org is 4.x, whose API differs.

## Refreshing

The versions are pinned at the top of \`scripts/vendor-dashboard-assets.sh\` (\`HTMX_VERSION\`, \`UPLOT_VERSION\`).
To upgrade, find the newest versions, change them there, and run the script from the repository root (it needs
npm):

\`\`\`sh
npm view htmx.org versions --json   # the newest 2.0.x
npm view uplot version
scripts/vendor-dashboard-assets.sh
git diff --stat src/emailmcp/dashboard/static/vendor/
\`\`\`

What the script does for each package, e.g. htmx:

\`\`\`sh
tmp=\$(mktemp -d)
npm pack --pack-destination "\$tmp" htmx.org@$HTMX_VERSION uplot@$UPLOT_VERSION
tar -xzf "\$tmp/htmx.org-$HTMX_VERSION.tgz" -C "\$tmp"   # package/dist/htmx.min.js, package/LICENSE
\`\`\`

To check, offline, that the files are the ones listed above:

\`\`\`sh
scripts/vendor-dashboard-assets.sh --check
\`\`\`
EOF

check

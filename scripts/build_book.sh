#!/usr/bin/env bash
# Build the book's HTML (_build/html) from the notebooks' stored outputs, with Sphinx warnings as errors.
# The browser-side libraries the pages need (the ipywidgets manager with require.js, and MathJax) are fetched from
# the npm registry once into _vendor/ (kept out of git) and served with the book: pages work offline, no CDN.
set -euo pipefail
cd "$(dirname "$0")/.."

fetch() {  # fetch PACKAGE VERSION: unpack an npm package into $tmp/PACKAGE
  (cd "$tmp" && npm pack --silent "$1@$2" > /dev/null)
  mkdir -p "$tmp/$1"
  tar xzf "$tmp"/*"${1##*/}-$2.tgz" -C "$tmp/$1"
}

VENDOR=_vendor  # served as _static/ (not the book's own _static, whose .js Jupyter Book loads on every page)
if [ ! -f "$VENDOR/widgets/embed-amd.js" ] || [ ! -f "$VENDOR/widgets/require.js" ] \
   || [ ! -f "$VENDOR/mathjax/tex-mml-chtml.js" ]; then
  tmp=$(mktemp -d)
  fetch @jupyter-widgets/html-manager 1.0.6  # the widget manager of ipywidgets 8
  fetch requirejs 2.3.6
  fetch mathjax 3.2.2
  rm -rf "$VENDOR" && mkdir -p "$VENDOR/widgets"
  cp -r "$tmp/@jupyter-widgets/html-manager/package/dist/." "$VENDOR/widgets/"
  cp "$tmp/requirejs/package/require.js" "$VENDOR/widgets/require.js"
  cp -r "$tmp/mathjax/package/es5" "$VENDOR/mathjax"
  rm -rf "$tmp"
  echo "fetched the widget manager, require.js and MathJax into $VENDOR/"
fi
jupyter-book build . --warningiserror --keep-going --quiet "$@"
# The widget manager's stylesheet asks for its icon fonts (FontAwesome) at @jupyter-widgets/ beside the page that
# renders a widget, not under _static/: serve a copy there, or a page whose widgets use an icon logs 404s.
mkdir -p _build/html/chapters/@jupyter-widgets
find _build/html/_static/widgets -maxdepth 1 -type f \( -name '*.woff' -o -name '*.woff2' -o -name '*.ttf' \
  -o -name '*.eot' -o -name '*.svg' \) -exec cp {} _build/html/chapters/@jupyter-widgets/ \;

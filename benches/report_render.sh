#!/usr/bin/env bash
# How long a browser takes to lay out and paint a report: headless Chromium screenshots
# the whole page (window as tall as the page) and, as the baseline, an empty page;
# best of 3 each. Also the page's size and its first paint (Chromium's own timing).
# usage: benches/report_render.sh REPORT.html
set -euo pipefail
page=$(realpath "$1")
chrome=${EXPERTCAST_CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome)}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
echo '<!DOCTYPE html><html><body></body></html>' > "$work/empty.html"
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --user-data-dir="$work/profile")
# The page's height, measured by a script in a copy (appended last, so nothing moves).
sed 's#</body>#<script>addEventListener("load",()=>{const p=document.createElement("pre");p.id="h";p.textContent="H="+document.documentElement.scrollHeight;document.body.appendChild(p)})</script></body>#' "$page" > "$work/probe.html"
h=$("$chrome" "${flags[@]}" --window-size=1300,2000 --virtual-time-budget=5000 --dump-dom "file://$work/probe.html" 2>/dev/null | grep -o 'H=[0-9][0-9]*' | head -1 | cut -c3-)
best() { # best of 3 wall seconds of a screenshot of $1 at height $2
  local b=999
  for i in 1 2 3; do
    local s=$(date +%s.%N)
    "$chrome" "${flags[@]}" --window-size=1300,"$2" --screenshot="$work/shot.png" "file://$1" >/dev/null 2>&1
    local e=$(date +%s.%N)
    b=$(python3 -c "print(min($b, $e - $s))")
  done
  echo "$b"
}
full=$(best "$page" "$h")
empty=$(best "$work/empty.html" "$h")
echo "page: $(stat -c %s "$page") bytes, $(grep -o '<figure id=' "$page" | wc -l) figures, $h px high"
echo "screenshot of the whole page: ${full} s; of an empty page as high: ${empty} s; difference (load, layout, paint): $(python3 -c "print(round($full - $empty, 2))") s"
"$chrome" --version

#!/bin/sh
# `pip check` of the environment, allowing only the one documented conflict: paddleseg 2.8.0 declares
# opencv-python<=4.6 (numpy 1 only) and is installed with --no-deps beside opencv-python-headless
# (README, "One lock, no resolver conflict"). Any other line fails, and is printed. PYTHON: the interpreter.
known="paddleseg 2.8.0 requires opencv-python, which is not installed."
out="$("${PYTHON:-python}" -m pip check 2>&1)"
rest="$(printf '%s\n' "$out" | grep -v -x -F -e "$known" -e "No broken requirements found." || true)"
if [ -n "$rest" ]; then
  printf 'pip check: %s\n' "$rest" >&2
  exit 1
fi
echo "pip check: no conflict beyond the documented paddleseg/opencv-python line"

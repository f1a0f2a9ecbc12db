# Sourced by scripts/install.sh and scripts/uninstall.sh: the program directory
# (--prefix) is replaced by one and removed by the other, so both check first
# that it is one install.sh made, never a directory of anything else
# (--prefix /opt would otherwise be rm -rf /opt).

# The file install.sh puts in every program directory it makes.
PREFIX_MARKER=.docker-identd-install

# prefix_is_ours DIR: DIR does not exist, or is a directory install.sh made
# (it holds the marker, or, made before the marker existed, the program's own
# bin/docker-identd.js and a package.json named docker-identd). A symlink, a
# file or any other directory is not.
prefix_is_ours() {
  local d=$1
  if [ ! -e "$d" ] && [ ! -L "$d" ]; then return 0; fi
  if [ -L "$d" ] || [ ! -d "$d" ]; then return 1; fi
  [ -f "$d/$PREFIX_MARKER" ] && return 0
  [ -f "$d/bin/docker-identd.js" ] && grep -q '"name": "docker-identd"' "$d/package.json" 2>/dev/null
}

# prefix_normalize DIR: DIR as an absolute path without ., .. or repeated and
# trailing slashes (symlinks are not followed: with --root they are not ours
# to follow); empty when DIR is not absolute.
prefix_normalize() {
  case "$1" in /*) realpath -m -s -- "$1" ;; *) echo "" ;; esac
}

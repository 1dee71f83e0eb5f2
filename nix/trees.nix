# Output trees: every file type, odd names and modes, large files. Each case builds one output
# whose NAR (types, executable bits, contents, names, symlink targets) both builders must agree on.
{ lib }:
let inherit (lib) mk busybox; in
{
  # $out itself is an empty regular file
  empty-file = mk "empty-file" "touch $out" { };
  # $out itself is an executable file
  exec-file = mk "exec-file" "printf '#!/bin/sh\\necho hi\\n' > $out; chmod 755 $out" { };
  # $out itself is an empty directory
  empty-dir = mk "empty-dir" "mkdir $out" { };
  # $out itself is a dangling symlink
  out-symlink = mk "out-symlink" "ln -s /nonexistent/target $out" { };
  # $out itself is a symlink to an input (makes a reference to the busybox source)
  out-symlink-input = mk "out-symlink-input" "ln -s ${busybox} $out" { };

  # nested empty directories and empty files next to non-empty ones
  empties = mk "empties" ''
    mkdir -p $out/a/b/c $out/empty $out/x/empty-too
    touch $out/empty-file $out/a/b/zero
    echo notempty > $out/a/file
  '' { };

  # relative, absolute, dangling, looping, climbing and directory symlinks
  symlinks = mk "symlinks" ''
    mkdir -p $out/dir/sub; echo target > $out/file; echo inner > $out/dir/sub/inner
    cd $out
    ln -s file rel
    ln -s dir dir-link
    ln -s dir/sub/inner deep-rel
    ln -s ../../file dir/sub/up
    ln -s /nonexistent/abs dangling-abs
    ln -s missing dangling-rel
    ln -s loop loop
    ln -s chain2 chain1; ln -s chain3 chain2; ln -s file chain3
    ln -s ../../../../../../etc/passwd escape
    ln -s 'target with spaces' spaced
    ln -s "$(printf 'tar\nget')" newline-target
    ln -s "$(printf '%0200d' 0 | tr 0 x)/$(printf '%0200d' 0 | tr 0 y)" long-target
    ln -s . dot; ln -s .. dotdot; ln -s / root
  '' { };

  # names a NAR sorts and escapes by bytes: spaces, unicode, leading dash, newline, quotes…
  odd-names = mk "odd-names" ''
    mkdir $out; cd $out
    for n in 'with space' ' leading-space' 'trailing-space ' -dash --double-dash -rf \
        'héllo wörld' '☃' '🦀 crab' 'Z' 'a' 'A' 'a b' 'a-b' 'a.b' 'a_b' 'ab' 'a~' '_' '~' \
        '.hidden' '..dots' 'quote"d' "single'q" 'back\slash' 'star*' 'q?' '[br]' '{c}' \
        'semi;colon' 'amp&' 'dollar$x' 'pipe|' 'lt<gt>' 'col:on' '#hash' '%pct' '=eq'; do
      printf '%s\n' "$n" > "./$n"
    done
    printf 'newline\n' > "$(printf 'new\nline')"
    printf 'tab\n' > "$(printf 'ta\tb')"
    printf 'cr\n' > "$(printf 'c\rr')"
    printf 'long\n' > "$(printf '%0255d' 0 | tr 0 L)"
    mkdir 'dir with space' '☃ dir'; touch 'dir with space/inner file' '☃ dir/☃'
  '' { };

  # names that are not valid UTF-8 (single bytes 0x80-0xff)
  odd-names-bytes = mk "odd-names-bytes" ''
    mkdir $out; cd $out
    printf 'latin1\n' > "$(printf 'caf\351')"
    printf 'ff\n' > "$(printf '\377')"
    printf 'mixed\n' > "$(printf 'a\200b\303\251')"
    ln -s "$(printf 'caf\351')" "$(printf 'link-\376')"
  '' { };

  # modes: the NAR keeps only "executable", which is the owner's x bit alone (f100 is
  # executable, f010 and f001 are not); setuid/setgid attempts are refused by Nix's seccomp
  # filter, and must not survive in any case; d000 is unreadable to the build user afterwards
  modes = mk "modes" ''
    mkdir -p $out/d777 $out/d700 $out/sticky $out/d000/inner $out/setgid-dir; cd $out
    for m in 600 644 664 666 700 711 750 755 777 100 010 001 400 000; do
      echo "$m" > f$m; chmod $m f$m
    done
    echo x > d000/inner/file
    echo s > setuid; chmod 755 setuid; chmod 4755 setuid 2>/dev/null || true
    echo g > setgid; chmod 755 setgid; chmod 2755 setgid 2>/dev/null || true
    chmod 2755 setgid-dir 2>/dev/null || true
    chmod 777 d777; chmod 700 d700; chmod 1777 sticky; chmod 000 d000
    echo mtime > old; touch -d '2001-01-01 00:00:00' old
    echo hard > hard1; ln hard1 hard2
  '' { };

  # a ~20 MB file (seq 1..2700000) and a 32 MiB sparse file ending in a marker
  large = mk "large" ''
    mkdir $out; seq 1 2700000 > $out/numbers
    truncate -s 33554432 $out/sparse; echo end >> $out/sparse
  '' { };

  # 60 nested directories
  deep = mk "deep" ''
    p=$out; for i in $(seq 1 60); do p=$p/d$i; done
    mkdir -p $p; echo deep > $p/leaf
  '' { };

  # 2000 small files in 20 directories, 1000 symlinks to them
  many = mk "many" ''
    mkdir $out; cd $out
    for d in $(seq 0 19); do
      mkdir d$d
      for f in $(seq 0 99); do echo "$d $f" > d$d/f$f; done
      for f in $(seq 0 49); do ln -s f$f d$d/l$f; done
    done
  '' { };
}

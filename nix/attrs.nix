# Derivation attributes with a meaning to the builder: passAsFile, placeholders, odd env and
# args, __structuredAttrs, exportReferencesGraph, and the reference constraints
# (allowedReferences, disallowedReferences, allowedRequisites, disallowedRequisites, outputChecks)
# in passing and failing variants. The failing ones name the `error:` line Nix prints.
{ lib, deps }:
let
  inherit (lib) mk fails;
  inherit (deps) a b c;
  oddEnv = {
    quotes = "say \"hi\" 'there'";
    backslashes = "a\\b\\\\c\\n";
    newlines = "line1\nline2\r\nline3\n";
    tabs = "a\tb\t";
    unicode = "héllo wörld ☃ 🦀";
    empty = "";
    "weird key \"x\"\\" = "v";
    "with space" = "s";
    "=starts-with-equals" = "e";
    list = [ "a" "b c" 1 true false null ];
    number = 42;
    negative = -7;
    float = 1.5;
    yes = true;
    no = false;
    nul = null;
  };
  notAllowed = name: "output '/nix/store/[a-z0-9]{32}-${name}' is not allowed to refer to the following paths:";
in
rec {
  # passAsFile: the value goes to /build/.attr-<hash> (exact bytes), the variable is unset
  pass-as-file = mk "attrs-pass-as-file" ''
    mkdir $out
    cat "$barPath" > $out/bar; cat "$bazPath" > $out/baz; cat "$emptyPath" > $out/empty
    cat "$refPath" > $out/ref
    echo "bar=''${bar-unset} foo=$foo barPath=$barPath" > $out/vars
    cd /build; stat -c '%n %a %u:%g %s' .attr-* > $out/files
  '' {
    bar = "bar contents\n"; baz = "bäz ☃ no newline"; empty = ""; ref = "see ${c}";
    foo = "plain"; passAsFile = [ "bar" "baz" "empty" "ref" ];
  };
  # passAsFile with plain values: an output without store paths (cases/nix.yaml checks its tree)
  pass-as-file-plain = mk "attrs-pass-as-file-plain" ''
    cat "$textPath" > $out; echo "text=''${text-unset} path=$textPath" >> $out
  '' { text = "passed as a file\n"; passAsFile = [ "text" ]; };

  # builtins.placeholder is replaced by the output path in env, args and passAsFile files
  # (out refers to dev, not the other way: outputs may not form a cycle)
  placeholders = mk "attrs-placeholders" ''
    echo "env: $where" > ${builtins.placeholder "out"}
    echo "args: ${builtins.placeholder "dev"}" >> $out
    cat "$notePath" >> $out
    echo "dev" > $dev
  '' {
    outputs = [ "out" "dev" ];
    where = builtins.placeholder "dev";
    note = "file: ${builtins.placeholder "out"}\n";
    passAsFile = [ "note" ];
  };

  # env values and names with quotes, backslashes, newlines, unicode; non-string attributes.
  # No shell in between (busybox sh passes on only names that are shell identifiers): the
  # builder is the applet itself, reading its own environment block, with the output path
  # given as a placeholder in args. odd-env sorts it, odd-environ keeps Nix's order.
  odd-env = derivation (oddEnv // {
    name = "attrs-odd-env"; inherit (lib) system; builder = lib.busybox;
    args = [ "sort" "-z" "-o" (builtins.placeholder "out") "/proc/self/environ" ];
  });
  odd-environ = derivation (oddEnv // {
    name = "attrs-odd-environ"; inherit (lib) system; builder = lib.busybox;
    args = [ "cp" "/proc/self/environ" (builtins.placeholder "out") ];
  });

  # argv: spaces, quotes, backslashes, newline, empty and tab arguments
  odd-args = derivation {
    name = "attrs-odd-args"; inherit (lib) system; builder = lib.busybox;
    args = [ "sh" "-c" "printf '%s|' \"$0\" \"$@\" > $out" "arg0" "with space" "q\"uote"
      "back\\slash" "nl\nx" "" "tab\tx" "ü" ];
  };

  # __structuredAttrs: .attrs.json and .attrs.sh in /build, no per-attribute variables
  structured = mk "attrs-structured" ''
    out=$(sed -n 's/.*"outputs":{"doc":"[^"]*","out":"\([^"]*\)".*/\1/p' /build/.attrs.json)
    doc=$(sed -n 's/.*"outputs":{"doc":"\([^"]*\)".*/\1/p' /build/.attrs.json)
    mkdir $out; cp /build/.attrs.json /build/.attrs.sh $out/
    env | cut -d= -f1 | sort > $out/env-names
    ls -A /build > $out/build-files
    echo doc > $doc
  '' {
    __structuredAttrs = true;
    outputs = [ "out" "doc" ];
    nested = { a = [ 1 2 { b = "c"; } ]; s = "q\"\n"; f = 0.25; n = null; t = true; };
    list = [ "x" "y" ];
    str = "plain";
    passAsFile = [ "str" ];
    dep = c;
  };

  # exportReferencesGraph: the closures of a (b, c) and of a source, as registration text
  export-graph = mk "attrs-export-graph" ''
    mkdir $out; cp graph-a $out/graph-a; cp graph-src $out/graph-src
  '' { exportReferencesGraph = [ "graph-a" a "graph-src" lib.bb ]; };

  # exportReferencesGraph with __structuredAttrs: the closure as JSON inside .attrs.json
  export-graph-structured = mk "attrs-export-graph-structured" ''
    out=$(sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' /build/.attrs.json)
    cp /build/.attrs.json $out
  '' { __structuredAttrs = true; exportReferencesGraph = { closure = [ a ]; }; };

  # reference constraints that hold
  allowed-refs-ok = mk "attrs-allowed-refs-ok" "echo ${c} > $out" { allowedReferences = [ c ]; };
  allowed-refs-self = mk "attrs-allowed-refs-self" "echo $out > $out" { allowedReferences = [ "out" ]; };
  allowed-refs-empty = mk "attrs-allowed-refs-empty" "cat ${c} > $out" { allowedReferences = [ ]; };
  disallowed-refs-ok = mk "attrs-disallowed-refs-ok" "echo ${c} > $out" {
    disallowedReferences = [ b ]; };
  allowed-requisites-ok = mk "attrs-allowed-requisites-ok" "echo ${b} > $out" {
    allowedRequisites = [ b c ]; };
  disallowed-requisites-ok = mk "attrs-disallowed-requisites-ok" "echo ${b} > $out" {
    disallowedRequisites = [ a ]; };
  output-checks-ok = mk "attrs-output-checks-ok" ''
    out=$(sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' /build/.attrs.json)
    echo ${c} > $out
  '' { __structuredAttrs = true;
       outputChecks.out = { allowedReferences = [ c ]; maxSize = 1000; maxClosureSize = 2000; }; };

  # reference constraints that are violated
  allowed-refs-fail = fails (notAllowed "attrs-allowed-refs-fail")
    (mk "attrs-allowed-refs-fail" "echo ${c} > $out" { allowedReferences = [ ]; });
  disallowed-refs-fail = fails (notAllowed "attrs-disallowed-refs-fail")
    (mk "attrs-disallowed-refs-fail" "echo ${c} > $out" { disallowedReferences = [ c ]; });
  allowed-requisites-fail = fails (notAllowed "attrs-allowed-requisites-fail")
    (mk "attrs-allowed-requisites-fail" "echo ${b} > $out" { allowedRequisites = [ b ]; });
  disallowed-requisites-fail = fails (notAllowed "attrs-disallowed-requisites-fail")
    (mk "attrs-disallowed-requisites-fail" "echo ${b} > $out" { disallowedRequisites = [ c ]; });
  output-checks-max-size = fails "path '/nix/store/[a-z0-9]{32}-attrs-output-checks-max-size' is too large at [0-9]+ bytes; limit is 10 bytes"
    (mk "attrs-output-checks-max-size" ''
      out=$(sed -n 's/.*"outputs":{"out":"\([^"]*\)".*/\1/p' /build/.attrs.json)
      echo "more than ten bytes" > $out
    '' { __structuredAttrs = true; outputChecks.out.maxSize = 10; });
}

#!/bin/sh
# A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.
# Usage: client.sh PROVIDER URL   (prints the API's answer; needs curl)
# TOKEN and INVALIDATE through the agent's own CLI. Each request is its own
# connection: nothing to reopen when the agent closes idle ones. The token
# goes to curl on stdin, not in its arguments, which any local user can
# read in /proc.
set -u
name=$1 url=$2
sock=${SHOP_AUTH_AGENT_SOCKET:-/run/shop-auth-agent/agent.sock}
body=$(mktemp) || exit
trap 'rm -f "$body"' EXIT
# Exit 75: no token now, try later; 77 or 78: a person must act.
token=$(shop-auth-agent --socket "$sock" token "$name") || exit
for attempt in 1 2; do
  code=$(printf 'Authorization: Bearer %s\n' "$token" |
    curl -sS -H @- -o "$body" -w '%{http_code}' "$url") || exit
  if [ "$code" != 401 ]; then
    cat "$body"
    case $code in 2??) exit 0 ;; *) echo "client.sh: HTTP $code from $url" >&2; exit 1 ;; esac
  fi
  [ "$attempt" = 2 ] && break
  # The token the partner refused: the answer is the one to use now.
  token=$(printf '%s\n' "$token" | shop-auth-agent --socket "$sock" invalidate "$name" -) || exit
done
echo "client.sh: $url refused a new token too" >&2
exit 1

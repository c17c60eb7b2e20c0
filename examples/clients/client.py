#!/usr/bin/env python3
"""A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.

Usage: client.py PROVIDER URL   (prints the API's answer; Python 3.6+)
"""
import json, os, socket, sys, urllib.error, urllib.request

SOCKET = os.environ.get("SHOP_AUTH_AGENT_SOCKET") or "/run/shop-auth-agent/agent.sock"


class Agent:
    """One connection, kept open; when the agent has closed it (after 60 s
    idle, or a restart) it is opened again and the request sent once more."""

    sock = None

    def ask(self, line):
        for attempt in (1, 2):
            try:
                if self.sock is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(SOCKET)
                    self.sock, self.lines = s, s.makefile(encoding="utf-8")
                self.sock.sendall(line.encode() + b"\n")
                answer = self.lines.readline()
                if answer.endswith("\n"):
                    return json.loads(answer)
            except OSError:
                if attempt == 2:
                    raise
            if self.sock is not None:
                self.lines.close()
                self.sock.close()
                self.sock = None
        raise ConnectionError("the agent closed the connection")

    def token(self, name, refused=None):
        """The answer to TOKEN, or to INVALIDATE with `refused`: a token the API answered 401 to."""
        a = self.ask(f"INVALIDATE {name} {refused}" if refused else f"TOKEN {name}")
        if not a["ok"]:
            # state "rejected" or "logged_out": a person must act; else retry after retry_in seconds
            raise RuntimeError(f'{name}: {a["error"]} ({a.get("state")}): {a["message"]}')
        return a


def call(agent, name, url):
    refused = None
    for _ in (1, 2):
        a = agent.token(name, refused)
        auth = {"Authorization": f'{a["token_type"]} {a["access_token"]}'}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=auth)) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
            refused = a["access_token"]
    raise RuntimeError(f"{url} refused a new token too")


if __name__ == "__main__":
    try:
        print(call(Agent(), sys.argv[1], sys.argv[2]))
    except (OSError, RuntimeError) as e:
        sys.exit(f"client.py: {e}")

// A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.
// Usage: node client.js PROVIDER URL   (prints the API's answer; Node 18+)
"use strict";
const net = require("node:net");

const SOCKET = process.env.SHOP_AUTH_AGENT_SOCKET || "/run/shop-auth-agent/agent.sock";

// One connection per request: cheap on a Unix socket, and nothing to reopen
// when the agent closes idle connections (after 60 s) or restarts.
function ask(line) {
  return new Promise((resolve, reject) => {
    let answer = "";
    const conn = net.createConnection(SOCKET, () => conn.end(line + "\n"));
    conn.setEncoding("utf8");
    conn.on("data", (chunk) => (answer += chunk));
    conn.on("error", reject);
    conn.on("end", () =>
      answer.endsWith("\n") ? resolve(JSON.parse(answer)) : reject(new Error("the agent closed the connection")),
    );
  });
}

// The answer to TOKEN, or to INVALIDATE with `refused`: a token the API answered 401 to.
async function token(name, refused) {
  const a = await ask(refused ? `INVALIDATE ${name} ${refused}` : `TOKEN ${name}`);
  // state "rejected" or "logged_out": a person must act; else retry after retry_in seconds
  if (!a.ok) throw new Error(`${name}: ${a.error} (${a.state}): ${a.message}`);
  return a;
}

async function call(name, url) {
  let refused;
  for (let attempt = 1; attempt <= 2; attempt++) {
    const a = await token(name, refused);
    const response = await fetch(url, { headers: { Authorization: `${a.token_type} ${a.access_token}` } });
    if (response.status !== 401) {
      if (!response.ok) throw new Error(`HTTP ${response.status} from ${url}`);
      return response.text();
    }
    refused = a.access_token;
  }
  throw new Error(`${url} refused a new token too`);
}

call(process.argv[2], process.argv[3]).then(console.log, (e) => {
  console.error(`client.js: ${e.message}`);
  process.exitCode = 1;
});

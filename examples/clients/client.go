// A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.
// Usage: go run client.go PROVIDER URL   (prints the API's answer; Go 1.16+)
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

type Answer struct {
	OK          bool   `json:"ok"`
	TokenType   string `json:"token_type"`
	AccessToken string `json:"access_token"`
	Error       string `json:"error"`
	Message     string `json:"message"`
	State       string `json:"state"`
}

// Agent keeps one connection; when the agent has closed it (after 60 s
// idle, or a restart) it is opened again and the request sent once more.
type Agent struct {
	conn  net.Conn
	lines *bufio.Reader
}

func (a *Agent) ask(line string) (answer Answer, err error) {
	for attempt := 1; attempt <= 2; attempt++ {
		if a.conn == nil {
			path := os.Getenv("SHOP_AUTH_AGENT_SOCKET")
			if path == "" {
				path = "/run/shop-auth-agent/agent.sock"
			}
			if a.conn, err = net.Dial("unix", path); err != nil {
				continue
			}
			a.lines = bufio.NewReader(a.conn)
		}
		var reply string
		if _, err = io.WriteString(a.conn, line+"\n"); err == nil {
			if reply, err = a.lines.ReadString('\n'); err == nil {
				return answer, json.Unmarshal([]byte(reply), &answer)
			}
		}
		a.conn.Close()
		a.conn = nil
	}
	return answer, err
}

// Token answers TOKEN, or INVALIDATE when refused (a token the API answered 401 to) is not "".
func (a *Agent) Token(name, refused string) (Answer, error) {
	line := "TOKEN " + name
	if refused != "" {
		line = "INVALIDATE " + name + " " + refused
	}
	answer, err := a.ask(line)
	if err == nil && !answer.OK {
		// State "rejected" or "logged_out": a person must act; else retry after retry_in seconds.
		err = fmt.Errorf("%s: %s (%s): %s", name, answer.Error, answer.State, answer.Message)
	}
	return answer, err
}

func call(agent *Agent, name, url string) (string, error) {
	refused := ""
	for attempt := 1; attempt <= 2; attempt++ {
		token, err := agent.Token(name, refused)
		if err != nil {
			return "", err
		}
		request, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return "", err
		}
		request.Header.Set("Authorization", token.TokenType+" "+token.AccessToken)
		response, err := http.DefaultClient.Do(request)
		if err != nil {
			return "", err
		}
		body, err := io.ReadAll(response.Body)
		response.Body.Close()
		if response.StatusCode != http.StatusUnauthorized {
			if err == nil && response.StatusCode/100 != 2 {
				err = fmt.Errorf("HTTP %d from %s", response.StatusCode, url)
			}
			return string(body), err
		}
		refused = token.AccessToken
	}
	return "", fmt.Errorf("%s refused a new token too", url)
}

func main() {
	body, err := call(&Agent{}, os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "client.go:", err)
		os.Exit(1)
	}
	fmt.Println(body)
}

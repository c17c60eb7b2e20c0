// A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.
// Usage: .NET 6+: this file as a console project's Program.cs; dotnet run -- PROVIDER URL
//        Mono 6.8: mcs -r:System.Net.Http Client.cs && mono Client.exe PROVIDER URL
// (prints the API's answer)
using System;
using System.IO;
using System.Net.Http;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

class Agent
{
    Socket socket;
    StreamReader lines;

    // One connection, kept open; when the agent has closed it (after 60 s
    // idle, or a restart) it is opened again and the request sent once more.
    string Ask(string line)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                if (socket == null)
                {
                    string path = Environment.GetEnvironmentVariable("SHOP_AUTH_AGENT_SOCKET");
                    if (string.IsNullOrEmpty(path)) path = "/run/shop-auth-agent/agent.sock";
                    socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                    socket.Connect(new UnixDomainSocketEndPoint(path));
                    lines = new StreamReader(new NetworkStream(socket), new UTF8Encoding(false));
                }
                socket.Send(Encoding.UTF8.GetBytes(line + "\n"));
                string answer = lines.ReadLine();
                if (answer != null) return answer;
                if (attempt == 2) throw new IOException("the agent closed the connection");
            }
            catch (Exception e) when (e is IOException || e is SocketException)
            {
                if (attempt == 2) throw;
            }
            if (socket != null) socket.Dispose();
            socket = null;
        }
    }

    // The answer to TOKEN, or to INVALIDATE when refused (a token the API answered 401 to) is not null.
    public string Token(string name, string refused)
    {
        string a = Ask(refused == null ? "TOKEN " + name : "INVALIDATE " + name + " " + refused);
        // "state" "rejected" or "logged_out": a person must act; else retry after "retry_in" seconds
        if (!a.StartsWith("{\"ok\":true"))
            throw new IOException(name + ": " + Field(a, "error") + " (" + Field(a, "state") + "): " + Field(a, "message"));
        return a;
    }

    // A string field of the agent's compact JSON; a POS would use its JSON library (System.Text.Json).
    public static string Field(string json, string name)
    {
        Match m = Regex.Match(json, "\"" + name + "\":\"((?:[^\"\\\\]|\\\\.)*)\"");
        return m.Success ? m.Groups[1].Value : null;
    }
}

class Program
{
    static int Main(string[] args)
    {
        var agent = new Agent();
        var http = new HttpClient();
        string refused = null;
        try
        {
            for (int attempt = 1; attempt <= 2; attempt++)
            {
                string a = agent.Token(args[0], refused);
                var request = new HttpRequestMessage(HttpMethod.Get, args[1]);
                request.Headers.TryAddWithoutValidation("Authorization", Agent.Field(a, "token_type") + " " + Agent.Field(a, "access_token"));
                HttpResponseMessage response = http.SendAsync(request).Result;
                if ((int)response.StatusCode != 401)
                {
                    response.EnsureSuccessStatusCode();
                    Console.WriteLine(response.Content.ReadAsStringAsync().Result);
                    return 0;
                }
                refused = Agent.Field(a, "access_token");
            }
            throw new IOException(args[1] + " refused a new token too");
        }
        catch (Exception e)
        {
            Console.Error.WriteLine("Client.cs: " + (e.InnerException ?? e).Message);
            return 1;
        }
    }
}

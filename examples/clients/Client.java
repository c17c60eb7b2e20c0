// A POS's loop with shop-auth-agent: TOKEN, call the API, INVALIDATE on 401.
// Usage: java Client.java PROVIDER URL   (prints the API's answer; Java 17+)
import java.io.*;
import java.net.URI;
import java.net.UnixDomainSocketAddress;
import java.net.http.*;
import java.nio.channels.*;
import java.nio.charset.StandardCharsets;
import java.util.regex.*;

public class Client {
    /** One connection, kept open; when the agent has closed it (after 60 s
     *  idle, or a restart) it is opened again and the request sent once more. */
    static class Agent {
        SocketChannel channel;
        BufferedReader lines;
        Writer out;

        String ask(String line) throws IOException {
            for (int attempt = 1; ; attempt++) {
                try {
                    if (channel == null) {
                        String path = System.getenv("SHOP_AUTH_AGENT_SOCKET");
                        if (path == null || path.isEmpty()) path = "/run/shop-auth-agent/agent.sock";
                        channel = SocketChannel.open(UnixDomainSocketAddress.of(path));
                        lines = new BufferedReader(Channels.newReader(channel, StandardCharsets.UTF_8));
                        out = Channels.newWriter(channel, StandardCharsets.UTF_8);
                    }
                    out.write(line + "\n");
                    out.flush();
                    String answer = lines.readLine();
                    if (answer != null) return answer;
                    if (attempt == 2) throw new EOFException("the agent closed the connection");
                } catch (IOException e) {
                    if (attempt == 2) throw e;
                }
                if (channel != null) channel.close();
                channel = null;
            }
        }

        /** The answer to TOKEN, or to INVALIDATE when refused (a token the API answered 401 to) is not null. */
        String token(String name, String refused) throws IOException {
            String a = ask(refused == null ? "TOKEN " + name : "INVALIDATE " + name + " " + refused);
            // "state" "rejected" or "logged_out": a person must act; else retry after "retry_in" seconds
            if (!a.startsWith("{\"ok\":true"))
                throw new IOException(name + ": " + field(a, "error") + " (" + field(a, "state") + "): " + field(a, "message"));
            return a;
        }
    }

    /** A string field of the agent's compact JSON; a POS would use its JSON library (Jackson, Gson). */
    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\":\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(json);
        return m.find() ? m.group(1) : null;
    }

    public static void main(String[] args) throws Exception {
        Agent agent = new Agent();
        HttpClient http = HttpClient.newHttpClient();
        String refused = null;
        for (int attempt = 1; attempt <= 2; attempt++) {
            String a = agent.token(args[0], refused);
            HttpRequest request = HttpRequest.newBuilder(URI.create(args[1]))
                .header("Authorization", field(a, "token_type") + " " + field(a, "access_token")).build();
            HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() != 401) {
                if (response.statusCode() / 100 != 2) throw new IOException("HTTP " + response.statusCode() + " from " + args[1]);
                System.out.println(response.body());
                return;
            }
            refused = field(a, "access_token");
        }
        throw new IOException(args[1] + " refused a new token too");
    }
}

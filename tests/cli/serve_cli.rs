//! CLI tests of `qrm-serve`: the replies equal offline `qrm-score` for both OpenRLHF request
//! shapes, `/score` and concurrent single-item clients; bad requests get JSON errors and the
//! server keeps serving; a full queue answers 503 with `Retry-After`; SIGTERM answers the
//! requests in flight and exits 0. The server runs on a free loopback port; the client is a
//! plain HTTP/1.1 request over a `TcpStream` (`Connection: close`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::score_cli::{embed_goal, fixture, generations, list_column, tool};
use qrm::model::template::Template;
use qrm::pipeline::io::read_table;
use serde_json::{json, Value};

/// A running qrm-serve on the tiny llama and the character tokenizer.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("qrm-serve"))
            .arg("--rm")
            .arg(fixture("tiny-llama"))
            .arg("--tokenizer")
            .arg(fixture("tiny-tokenizer/tokenizer.json"))
            .args(["--template", "chatml", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut address = None;
        let mut log = String::new();
        while address.is_none() {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("qrm-serve exited before listening:\n{log}");
            }
            log.push_str(&line);
            address = line
                .split("listening on http://")
                .nth(1)
                .map(|rest| rest.trim().to_owned());
        }
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Server {
            child,
            address: address.unwrap(),
        }
    }

    fn send(&self, raw: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream.write_all(raw).unwrap();
        read_reply(stream)
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        self.send(&raw)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, body.to_string().as_bytes())
    }

    /// Waits until `/metrics` shows `line` (a gauge's value), so a test acts on the server's
    /// state rather than on a guess of how long a loaded machine takes.
    fn wait_for_metric(&self, line: &str) {
        let started = Instant::now();
        while !self
            .request("GET", "/metrics", b"")
            .body
            .lines()
            .any(|l| l == line)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never saw {line}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The error message of a JSON error reply with this status.
    fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["error"]["code"], status, "{body}");
        body["error"]["message"].as_str().unwrap().to_owned()
    }
}

fn read_reply(mut stream: TcpStream) -> Reply {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

/// Offline qrm-score of `input` with `goal`: (question, response, reward, token_rewards,
/// q_values) per row.
type Offline = Vec<(String, String, f32, Vec<f32>, Vec<f32>)>;

fn score_offline(input: &Path, goal: &Path, out: &Path) -> Offline {
    tool("qrm-score", "chatml")
        .arg(input)
        .arg("--goal")
        .arg(goal)
        .arg("-o")
        .arg(out)
        .assert()
        .success();
    let frame = read_table(out).unwrap();
    let strings = |name: &str| -> Vec<String> {
        let column = frame.column(name).unwrap().str().unwrap().clone();
        column.iter().map(|s| s.unwrap().to_owned()).collect()
    };
    let rewards: Vec<f32> = frame
        .column("reward")
        .unwrap()
        .f32()
        .unwrap()
        .iter()
        .map(|r| r.unwrap())
        .collect();
    let token_rewards = list_column(&frame, "token_rewards");
    let q_values = list_column(&frame, "q_values");
    strings("question")
        .into_iter()
        .zip(strings("response"))
        .zip(rewards)
        .zip(token_rewards.into_iter().zip(q_values))
        .map(|(((q, r), reward), (t, v))| (q, r, reward, t, v))
        .collect()
}

fn assert_close(got: &Value, expected: f32, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}")) as f32;
    assert!((got - expected).abs() < 1e-5, "{what}: {got} vs {expected}");
}

#[test]
fn replies_equal_offline_scores_for_both_request_shapes_and_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 10);
    let goal = embed_goal(dir.path());
    let offline = score_offline(&input, &goal, &dir.path().join("scores.parquet"));
    let server = Server::start(&["--goal", goal.to_str().unwrap(), "-q"]);

    // OpenRLHF sends the templated prompt followed by the response and the decoded EOS.
    let prompts: Vec<String> = offline
        .iter()
        .map(|(q, ..)| Template::ChatMl.prompt(q))
        .collect();
    let queries: Vec<String> = offline
        .iter()
        .zip(&prompts)
        .map(|((_, r, ..), p)| format!("{p}{r}<|im_end|>"))
        .collect();
    let labels: Vec<&str> = vec!["unused"; queries.len()];
    for body in [
        json!({"query": queries, "prompts": prompts, "labels": labels}),
        json!({"query": queries}),
    ] {
        let reply = server.post("/get_reward", &body);
        assert_eq!(reply.status, 200, "{reply:?}");
        let reply = reply.json();
        for (i, (_, _, reward, _, q_values)) in offline.iter().enumerate() {
            assert_close(&reply["rewards"][i], *reward, "rewards");
            assert_close(&reply["scores"][i], *reward, "scores");
            assert_close(
                &reply["extra_logs"]["q_last"][i],
                *q_values.last().unwrap(),
                "q_last",
            );
            let q_min = q_values.iter().copied().fold(f32::INFINITY, f32::min);
            assert_close(&reply["extra_logs"]["q_min"][i], q_min, "q_min");
        }
    }

    // Ten clients at once, one item each: the rows are batched together server-side.
    std::thread::scope(|scope| {
        let handles: Vec<_> = queries
            .iter()
            .zip(&prompts)
            .map(|(query, prompt)| {
                let server = &server;
                scope.spawn(move || {
                    server.post(
                        "/get_reward",
                        &json!({"query": [query], "prompts": [prompt], "labels": [null]}),
                    )
                })
            })
            .collect();
        for (handle, (_, _, reward, ..)) in handles.into_iter().zip(&offline) {
            let reply = handle.join().unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_close(&reply.json()["rewards"][0], *reward, "concurrent rewards");
        }
    });

    let items: Vec<Value> = offline
        .iter()
        .map(|(q, r, ..)| json!({"prompt": q, "response": r}))
        .collect();
    let reply = server.post("/score", &json!({"items": items, "per_token": true}));
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = reply.json();
    assert_eq!(reply["object"], "list");
    assert!(reply["model"].as_str().unwrap().starts_with("tiny-llama@"));
    let encoder = qrm::testing::tiny_encoder();
    let mut tokens = 0;
    for (i, (question, response, reward, token_rewards, q_values)) in offline.iter().enumerate() {
        let datum = &reply["data"][i];
        assert_eq!(datum["index"], i);
        assert_close(&datum["reward"], *reward, "reward");
        assert_eq!(datum["response_tokens"], token_rewards.len());
        assert_eq!(
            datum["tokens"].as_array().unwrap().len(),
            token_rewards.len()
        );
        // The whole row's tokens (no length limit); the tiny llama's context of 64 is also the
        // default --max-len, and longer rows lose prompt tokens.
        let whole = encoder.encode(question, response).unwrap().input_ids.len();
        tokens += whole.min(64);
        let truncated = if whole > 64 { "prompt" } else { "no" };
        assert_eq!(datum["truncated"], truncated, "{datum}");
        for (got, expected) in datum["token_rewards"]
            .as_array()
            .unwrap()
            .iter()
            .zip(token_rewards)
        {
            assert_close(got, *expected, "token_rewards");
        }
        for (got, expected) in datum["q_values"].as_array().unwrap().iter().zip(q_values) {
            assert_close(got, *expected, "q_values");
        }
    }
    assert_eq!(
        reply["usage"]["prompt_tokens"], tokens,
        "{}",
        reply["usage"]
    );
    let reply = server.post("/score", &json!({"items": items[..1]}));
    let datum = &reply.json()["data"][0];
    assert!(datum.get("token_rewards").is_none() && datum["q_last"].is_number());

    let metrics = server.request("GET", "/metrics", b"");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .headers
        .contains("content-type: text/plain; version=0.0.4"));
    // 2 batch requests and 10 single ones.
    assert!(
        metrics
            .body
            .contains("qrm_serve_requests_total{endpoint=\"get_reward\",status=\"200\"} 12"),
        "{}",
        metrics.body
    );
    let health = server.request("GET", "/health", b"").json();
    assert_eq!(health["status"], "ok");
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[
        "--max-body-bytes",
        "4000",
        "--max-queue",
        "3",
        "--read-timeout",
        "0.5",
        "-q",
    ]);
    let prompt = Template::ChatMl.prompt("What is 1 + 1?");
    let good = json!({"query": [format!("{prompt}2.")]});

    let message = server
        .request("POST", "/get_reward", b"{\"query\": [")
        .error(400);
    assert!(message.contains("malformed JSON"), "{message}");
    let message = server
        .post("/get_reward", &json!({"prompts": []}))
        .error(422);
    assert!(message.contains("missing field `query`"), "{message}");
    let message = server
        .post("/get_reward", &json!({"query": "one text"}))
        .error(422);
    assert!(message.contains("invalid type"), "{message}");
    let message = server
        .post(
            "/get_reward",
            &json!({"query": ["a", "b"], "prompts": ["a"]}),
        )
        .error(422);
    assert!(
        message.contains("`prompts` holds 1 texts but `query` 2"),
        "{message}"
    );
    let message = server
        .post("/get_reward", &json!({"query": ["no template"]}))
        .error(422);
    assert!(
        message.contains("query[0]") && message.contains("response marker"),
        "{message}"
    );
    let message = server
        .post("/score", &json!({"items": [{"prompt": "q"}]}))
        .error(422);
    assert!(message.contains("missing field `response`"), "{message}");
    let long = "w".repeat(5000);
    let message = server
        .post("/get_reward", &json!({"query": [long]}))
        .error(413);
    assert!(message.contains("--max-body-bytes 4000"), "{message}");
    let four = vec![format!("{prompt}2."); 4];
    let message = server
        .post("/get_reward", &json!({"query": four}))
        .error(413);
    assert!(message.contains("--max-queue 3"), "{message}");
    let message = server.request("POST", "/nowhere", b"{}").error(404);
    assert!(message.contains("/get_reward"), "{message}");
    server.request("GET", "/get_reward", b"").error(405);
    // A body announced as 100 bytes of which 10 arrive: 408 after --read-timeout.
    let mut stream = TcpStream::connect(&server.address).unwrap();
    stream
        .write_all(
            b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"query\":",
        )
        .unwrap();
    let started = Instant::now();
    let message = read_reply(stream).error(408);
    assert!(message.contains("--read-timeout 0.5"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let reply = server.post("/get_reward", &good);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["rewards"][0].is_number());
    assert_eq!(reply.json()["extra_logs"], json!({}));
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // The first request's 2 items wait in the queue for the 3 s window, so a second request
    // of 2 items finds the queue of at most 3 full.
    let server = Server::start(&["--max-queue", "3", "--batch-window-ms", "3000", "-q"]);
    let prompt = Template::ChatMl.prompt("What is 1 + 1?");
    let body = json!({"query": [format!("{prompt}2."), format!("{prompt}3.")]});
    std::thread::scope(|scope| {
        let first = scope.spawn(|| server.post("/get_reward", &body));
        server.wait_for_metric("qrm_serve_queue_items 2");
        let second = server.post("/get_reward", &body);
        let message = second.error(503);
        assert!(message.contains("queue is full"), "{message}");
        assert!(
            second.headers.contains("retry-after: 1"),
            "{}",
            second.headers
        );
        assert_eq!(first.join().unwrap().status, 200);
    });
}

#[test]
fn sigterm_answers_the_requests_in_flight_and_exits_0() {
    let mut server = Server::start(&["--batch-window-ms", "2000"]);
    let prompt = Template::ChatMl.prompt("What is 1 + 1?");
    let body = json!({"query": [format!("{prompt}2.")]});
    // A client connected that has sent nothing: it must not hold the stop for hyper's 30 s
    // header timeout.
    let idle = TcpStream::connect(&server.address).unwrap();
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| server.post("/get_reward", &body));
        // /metrics counts the requests in flight other than itself.
        server.wait_for_metric("qrm_serve_in_flight_requests 1");
        server.terminate();
        let reply = in_flight.join().unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(&server.address).is_err());
    drop(idle);
}

#[test]
fn an_item_over_max_len_under_truncate_skip_is_refused_or_null() {
    // The chatml prompt alone is over 16 tokens of the character tokenizer.
    let server = Server::start(&["--max-len", "16", "--truncate", "skip", "-q"]);
    let prompt = Template::ChatMl.prompt("What is 1 + 1?");
    let message = server
        .post("/get_reward", &json!({"query": [format!("{prompt}2.")]}))
        .error(422);
    assert!(
        message.contains("query[0] is longer than --max-len 16 tokens"),
        "{message}"
    );
    let reply = server.post(
        "/score",
        &json!({"items": [{"prompt": "What is 1 + 1?", "response": "2."}], "per_token": true}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let datum = &reply.json()["data"][0];
    assert!(datum["reward"].is_null(), "{datum}");
    assert_eq!(datum["truncated"], "skipped");
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 0);
}

use super::*;

fn publish(spec: &str) -> Publish {
    Publish::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

#[test]
fn publish_defaults_to_loopback_and_tcp() {
    let p = publish("8080:80");
    assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!((p.host_port, p.guest_port), (8080, 80));
    assert_eq!(p.protocol, Protocol::Tcp);
    assert_eq!(p.forward_spec(), "127.0.0.1/8080:80");
}

#[test]
fn publish_takes_an_address_and_a_protocol() {
    let p = publish("0.0.0.0:5353:53/udp");
    assert_eq!(p.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(p.protocol, Protocol::Udp);
    assert_eq!(p.forward_spec(), "0.0.0.0/5353:53");
    let p = publish("[::1]:8443:443/tcp");
    assert_eq!(p.host_ip, "::1".parse::<IpAddr>().unwrap());
    assert_eq!(p.forward_spec(), "::1/8443:443");
}

#[test]
fn malformed_publish_specs_name_the_spec() {
    for spec in [
        "",
        "80",
        "8080:80/sctp",
        "0:80",
        "8080:0",
        "70000:80",
        "a:b",
        "1.2.3:8080:80",
        "::1:8080:80",
        "[::1]8080:80",
        "[nope]:8080:80",
        "1.2.3.4::80",
        "8000-8010:80",
        "1:2:3:4",
    ] {
        let err = Publish::parse(spec).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, NetError::BadPublish { .. }), "{spec}: {text}");
        assert!(text.starts_with(&format!("-p {spec}:")), "{text}");
        assert!(text.contains("HOSTPORT:GUESTPORT"), "{text}");
    }
}

#[test]
fn publish_and_net_host_need_net() {
    let err = Network::from_options(false, false, &["8080:80".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "-p 8080:80 needs --net (the guest has no network without it); add --net"
    );
    let err = Network::from_options(false, true, &[]).unwrap_err();
    assert!(
        err.to_string().starts_with("--net-host needs --net"),
        "{err}"
    );
    assert_eq!(Network::from_options(false, false, &[]).unwrap(), None);
    // A malformed spec is named before the missing --net.
    let err = Network::from_options(false, false, &["x".into()]).unwrap_err();
    assert!(matches!(err, NetError::BadPublish { .. }), "{err}");
}

#[test]
fn the_same_host_port_twice_is_refused() {
    let specs = ["8080:80".to_string(), "127.0.0.1:8080:81".to_string()];
    let err = Network::from_options(true, false, &specs).unwrap_err();
    assert!(
        err.to_string().starts_with("-p 127.0.0.1:8080:81:"),
        "{err}"
    );
    // TCP and UDP on one port are two ports.
    let specs = ["53:53".to_string(), "53:53/udp".to_string()];
    let net = Network::from_options(true, false, &specs).unwrap().unwrap();
    assert_eq!(net.publish.len(), 2);
}

#[test]
fn a_port_in_use_is_refused_naming_the_spec() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let spec = format!("{port}:80");
    let net = Network::from_options(true, false, std::slice::from_ref(&spec))
        .unwrap()
        .unwrap();
    let err = net.check_ports().unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("-p {spec}: cannot listen")),
        "{err}"
    );
    drop(taken);
    net.check_ports().unwrap();
}

fn strings(args: &[OsString]) -> Vec<&str> {
    args.iter().map(|a| a.to_str().unwrap()).collect()
}

#[test]
fn passt_gets_the_addresses_the_guest_configures() {
    let net = Network::default();
    let args = passt_args(&net, 7, 1500, Path::new("/run/x/ready"), None);
    assert_eq!(
        strings(&args),
        [
            "-f",
            "-e",
            "-q",
            "--fd",
            "7",
            "-P",
            "/run/x/ready",
            "-a",
            "10.0.2.15",
            "-n",
            "24",
            "-g",
            "10.0.2.2",
            "-m",
            "1500",
            "--dns-forward",
            "10.0.2.3",
            "--no-map-gw",
            "-t",
            "none",
            "-u",
            "none"
        ]
    );
}

#[test]
fn net_host_maps_the_gateway_and_publish_forwards_ports() {
    let net = Network::from_options(
        true,
        true,
        &[
            "8080:80".into(),
            "0.0.0.0:9090:90".into(),
            "5353:53/udp".into(),
        ],
    )
    .unwrap()
    .unwrap();
    let args = passt_args(&net, 3, 1500, Path::new("r"), Some((65534, 65534)));
    let args = strings(&args);
    assert!(!args.contains(&"--no-map-gw"));
    assert!(args.windows(2).any(|w| w == ["--runas", "65534:65534"]));
    let tail = &args[args.len() - 6..];
    assert_eq!(
        tail,
        [
            "-t",
            "127.0.0.1/8080:80",
            "-t",
            "0.0.0.0/9090:90",
            "-u",
            "127.0.0.1/5353:53"
        ]
    );
}

#[test]
fn pasta_joins_the_pid_and_forwards_nothing_back() {
    let net = Network::default();
    let args = pasta_args(&net, 4242, Path::new("r"), false);
    let args = strings(&args);
    assert_eq!(args.last(), Some(&"4242"));
    assert!(args.windows(2).any(|w| w == ["-I", "eth0"]));
    assert!(args.windows(4).any(|w| w == ["-T", "none", "-U", "none"]));
    assert!(args.contains(&"--config-net"));
    assert!(args.contains(&"--no-map-gw"));
    assert!(!args.contains(&"--runas"));
    let as_root = pasta_args(&net, 4242, Path::new("r"), true);
    assert!(strings(&as_root)
        .windows(2)
        .any(|w| w == ["--runas", "0:0"]));
}

#[test]
fn guest_files_are_written_like_dockers() {
    assert_eq!(resolv_conf().lines().last(), Some("nameserver 10.0.2.3"));
    let plain = hosts(false);
    assert!(plain.starts_with("127.0.0.1\tlocalhost\n"), "{plain}");
    assert!(plain.contains("10.0.2.15\tmicrorun\n"), "{plain}");
    assert!(!plain.contains(HOST_NAME));
    assert!(hosts(true).ends_with("10.0.2.2\thost.microrun.internal\n"));
}

#[test]
fn a_missing_program_names_the_debian_package() {
    let err = NetError::NotInstalled { program: "passt" }.to_string();
    assert!(err.contains("`passt`") && err.contains("apt-get install passt"));
    assert!(find_program("sh").is_ok());
}

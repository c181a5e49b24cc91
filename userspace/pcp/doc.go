// Package pcp is the wire format of the Port Control Protocol (RFC 6887)
// and of its predecessor NAT-PMP (RFC 6886), which a subscriber's home
// router uses to ask the NAT for an inbound port (issue 16).
//
// It is a codec and nothing more: Decode turns a datagram a server
// received into a typed request, applying the validation the RFCs ask of
// a server (RFC 6887 §8.3 and §9, RFC 6886 §3), and every response type
// has an Encode. A request the server must answer with an error comes back
// as a *RequestError whose Response is the error response the RFC
// prescribes; one the server must ignore says so with Drop. DecodeResponse
// is the client's side, judging only the layout. The package imports only
// the standard library, so that the CLI and a test client can use it
// without the agent.
//
// Not done yet, later steps of issue 16: the server (socket, epoch,
// ANNOUNCE on restart, rate and mapping limits, nonce-checked renewal and
// deletion), the policy checks that need state (a port outside the
// subscriber's block, THIRD_PARTY authorisation, the protocol and port
// rules of MAP and PEER such as protocol 0 meaning all ports, what a
// FILTER's prefix covers), and the data-plane mapping. The tests that
// judge the server with real clients and a decoder that is not this one
// come with the server.
package pcp
